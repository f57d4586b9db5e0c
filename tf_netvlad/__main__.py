import sys

from tf_netvlad.cli import main

sys.exit(main())
