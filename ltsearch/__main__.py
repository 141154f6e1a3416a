from ltsearch.cli import main

raise SystemExit(main())
