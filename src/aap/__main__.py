from aap.cli import main

main()
