import sys

from bloom_agent.cli.main import main

sys.exit(main())
