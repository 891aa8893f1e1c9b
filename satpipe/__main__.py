from satpipe.cli import app

app(prog_name="satpipe")
