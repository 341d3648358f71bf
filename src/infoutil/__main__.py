from infoutil.cli import main

main()
