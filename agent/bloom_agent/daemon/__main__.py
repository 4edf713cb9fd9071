from bloom_agent.daemon.agent import main

raise SystemExit(main())
