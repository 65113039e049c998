import sys
from pathlib import Path

# Lets tests in different folders share helper modules kept here (e.g. `libp2p_events.py`) under
# pytest's importlib import mode.
sys.path.insert(0, str(Path(__file__).parent))
