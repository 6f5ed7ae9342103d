"""Suite files shipped with attnbench (this folder is installed as the package attnbench.suites)."""
