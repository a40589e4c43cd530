from splitc.compiler.cli import main

main()
