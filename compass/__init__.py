"""compass: data-first multilingual e-commerce embedding models for Southeast Asia."""

__version__ = "0.1.0"
