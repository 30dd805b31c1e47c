"""Command-line tools, each run from the repository root as `python -m tools.NAME ...` (`--help` for its flags):

  check_dataset    every video of a list found and decodable: python -m tools.check_dataset ROOT LIST LABELS
  prepare_videos   re-encode a dataset once for fast loading: python -m tools.prepare_videos SRC_ROOT LIST DST_ROOT
  kinetics_lists   Kinetics-400's training lists from the official annotations:
                   python -m tools.kinetics_lists ANNOTATIONS.csv ROOT
  classify_video   rank class names for your own video: python -m tools.classify_video VIDEO --classes a,b,c
  export_hf        any ViFi-CLIP as a Hugging Face CLIP folder: python -m tools.export_hf WEIGHTS FOLDER

None of them is the paper's method; train.py is the main job.
"""
