from distdl.cli import main

raise SystemExit(main())
