import sys
from pathlib import Path

# Lets the protocol tests share `scalar_learning.py` under pytest's importlib import mode.
sys.path.insert(0, str(Path(__file__).parent))
