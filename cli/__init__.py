"""Command-line interface of s2m-retrieval (Typer); thin: parse, call the library, print."""
