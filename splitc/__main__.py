from splitc.driver.cli import main

main()
