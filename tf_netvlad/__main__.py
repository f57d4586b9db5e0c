import sys

from tf_netvlad.cli.main import main

sys.exit(main())
