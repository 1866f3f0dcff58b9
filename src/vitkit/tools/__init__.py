"""Developer tools that ship with the package (``vitkit benchmark``)."""
