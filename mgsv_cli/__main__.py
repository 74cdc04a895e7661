from mgsv_cli.cli import main

main()
