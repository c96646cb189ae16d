from smallcnn.cli import main

main()
