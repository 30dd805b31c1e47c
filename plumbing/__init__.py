"""What the method needs around it, none of it the paper's method (the method is tokenizer.py, clip_model.py,
prompts.py, vifi.py, data.py and train.py, at the top of the repository):

  weights     clip_weights (OpenAI's names, downloads and formats), vifi_weights (the authors' checkpoints, ours, prompt
              checkpoints, Hugging Face folders), hf_export (any ViFi-CLIP as a Hugging Face CLIP folder)
  videos      video_decoder (decodes only the frames a clip needs), video_index (finds listed videos in a dataset as
              downloaded)
  running     protocols (the lists each setting reads), evaluation (multi-view evaluation, summaries, metrics.json),
              paper_figures (the paper's figure for a run's row), global_batches (the same batches on any number of
              processes), run_files (checkpoints, the log, exact resume), mixed_precision (autocast, train.py's
              precision per device, classify's measured one), atomic_files (files written whole or not at all),
              command_line (train.py's flags from its Config)

Of the method files, data.py uses video_decoder and vifi.py mixed_precision; train.py uses the rest, as do the tools
and the tests. tests/test_structure.py checks that importing any other method file loads nothing else from here.
"""
