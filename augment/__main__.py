from augment.cli import main

raise SystemExit(main())
