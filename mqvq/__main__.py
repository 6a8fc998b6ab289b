from mqvq.cli import main

main()
