from flowprep.demo.run import main

main(prog_name="python -m flowprep.demo")
