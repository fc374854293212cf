"""fastgate: a policy gate in the data path for LLM-driven function calls."""

__version__ = "0.1.0"
