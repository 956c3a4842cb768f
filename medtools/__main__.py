from medtools.cli import app

app(prog_name="medtools")
