from moorctl.cli import main

main()
