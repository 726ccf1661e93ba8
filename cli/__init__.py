"""Command-line interface of s2m-retrieval (Typer); thin: parse, call the library, print.

May import everything, `training` included (the `s2m train` commands).
"""

