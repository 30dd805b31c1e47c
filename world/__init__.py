"""The embedded synthetic world: what train.py runs on when no dataset or weights are named, a miniature of the paper's
experiment that runs on a laptop CPU in minutes. Not the paper's method.

  miniworld   the three toy video datasets (toy-k400, toy-hmdb, toy-ucf), rendered on first use into $VIFI_CACHE
              (`python -m world.miniworld generate | show`)
  tiny_clip   the world's tiny CLIP (clip_model's code at 48 px) and its pretraining on captioned stills
              (`python -m world.tiny_clip --out assets/tiny_clip_world.pt`)

What it shows of the paper's claims, and what not yet: benchmarks/README.md.
"""
