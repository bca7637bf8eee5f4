from kvfleet.cli.main import main

main()
