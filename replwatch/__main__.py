from replwatch.cli import main

raise SystemExit(main())
