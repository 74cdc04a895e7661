"""One module per ``mgsv`` command or command group; importing one registers its commands on
``cli.app``'s Typer applications."""
