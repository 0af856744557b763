from llamawheel_server import main

main()
