from compass.cli import main

main()
