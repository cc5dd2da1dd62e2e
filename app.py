"""The browser demo: `python app.py` serves the Gradio chat UI on http://127.0.0.1:7860."""

from cogvlm_lite.ui import main

if __name__ == "__main__":
    raise SystemExit(main())
