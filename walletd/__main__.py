from walletd.cli import main

main()
