from vitgender.cli import main

main()
