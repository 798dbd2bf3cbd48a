"""python -m opinfer.engine.tokenizer_data export"""

import sys

from opinfer.engine.tokenizer_data import export

if sys.argv[1:] != ["export"]:
    sys.exit("usage: python -m opinfer.engine.tokenizer_data export   (with the model packages installed)")
for p in export():
    print(f"wrote {p} ({p.stat().st_size} bytes)")
