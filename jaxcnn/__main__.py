"""`python -m jaxcnn` is the `jaxcnn` command."""

from jaxcnn.cli import main

raise SystemExit(main())
