"""The rules the structure rests on, checked rather than kept by habit.

- The import contracts in pyproject.toml (`lint-imports`): the API side (API, catalog, queue,
  storage, ...) never imports the engine, the worker, torch, diffusers or transformers; the
  domain imports no framework; no module imports another that imports it back.
- At run time too: starting the API's app and the CLI imports none of the model stack (what the
  static contracts cannot see, such as an import by name).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL_STACK = {"torch", "diffusers", "transformers", "sentencepiece"}


def test_the_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "import-linter is in the dev extra"
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:]


def test_the_api_process_imports_no_model_stack(tmp_path: Path) -> None:
    code = (
        "import sys, asyncio\n"
        "from sdapi.settings import Settings\n"
        "from sdapi.api.app import create_app\n"
        "import sdapi.cli, sdapi.client\n"
        f"settings = Settings(data_dir={str(tmp_path)!r}, translator='sdapi-tiny-translator')\n"
        "app = create_app(settings)\n"
        "async def main():\n"
        "    async with app.router.lifespan_context(app):\n"
        "        pass\n"
        "asyncio.run(main())\n"
        f"loaded = {sorted(MODEL_STACK)!r}\n"
        "imported = [m for m in loaded if m in sys.modules]\n"
        "print(*imported)\n"
        "sys.exit(1 if imported else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"imported: {done.stdout} {done.stderr[-2000:]}"
