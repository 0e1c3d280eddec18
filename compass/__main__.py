from compass.cli import main

# Guarded: the vLLM engine spawns worker processes that re-import the main module.
if __name__ == "__main__":
    main()
