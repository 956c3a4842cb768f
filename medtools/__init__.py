"""medtools: small composable command-line tools for privacy-preserving medical imaging."""

__version__ = "0.1.0"
