"""Drives `sorrel serve` with the official OpenAI Python SDK, as any app written against /v1/videos would.

Usage: openai_sdk.py BASE_URL API_KEY OUT_DIR
Writes OUT_DIR/video.mp4, thumbnail.webp, spritesheet.jpg and result.json; exits non-zero on any mismatch.
"""

import json
import sys
import warnings

import openai
from openai import OpenAI

# The SDK marks the videos API deprecated (OpenAI shut Sora down); that is exactly why Sorrel serves it.
warnings.simplefilter("ignore", DeprecationWarning)

base_url, key, out = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base_url, api_key=key, max_retries=0)


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


video = client.videos.create_and_poll(
    prompt="a red ball bouncing on a blue floor",
    model="tiny",
    seconds="1",
    size="32x32",
    extra_body={"seed": 42, "steps": 3},
)
check(video.status == "completed", f"status {video.status}: {video.error}")
check(video.progress == 100, f"progress {video.progress}")
check(video.seconds == "1" and video.size == "32x32" and video.model == "tiny", str(video))
check(video.completed_at >= video.created_at and video.expires_at > video.completed_at, str(video))

again = client.videos.retrieve(video.id)
check(again.id == video.id and again.status == "completed", str(again))

ids = [v.id for v in client.videos.list(limit=1, order="asc")]  # auto-pagination, one per page
check(ids == [video.id], f"list: {ids}")

client.videos.download_content(video.id).write_to_file(f"{out}/video.mp4")
thumb = client.videos.download_content(video.id, variant="thumbnail").read()
check(thumb[:4] == b"RIFF" and thumb[8:12] == b"WEBP", "thumbnail is WebP")
open(f"{out}/thumbnail.webp", "wb").write(thumb)
sheet = client.videos.download_content(video.id, variant="spritesheet").read()
check(sheet[:3] == b"\xff\xd8\xff", "sprite sheet is JPEG")
open(f"{out}/spritesheet.jpg", "wb").write(sheet)

remix = client.videos.remix(video.id, prompt="a blue ball bouncing on a red floor")
check(remix.remixed_from_video_id == video.id, str(remix))
remix = client.videos.poll(remix.id)
check(remix.status == "completed" and remix.size == video.size, str(remix))
ids = sorted(v.id for v in client.videos.list())
check(ids == sorted([video.id, remix.id]), f"list after remix: {ids}")

# Image to video: the SDK sends input_reference as a multipart file upload.
with open(f"{out}/first.png", "rb") as f:
    i2v = client.videos.create_and_poll(prompt="the picture comes to life", model="i2v", seconds="1",
                                        size="48x32", input_reference=f, extra_body={"seed": 1, "steps": 3})
check(i2v.status == "completed" and i2v.size == "48x32", f"image to video: {i2v}")
client.videos.download_content(i2v.id).write_to_file(f"{out}/i2v.mp4")
try:
    with open(f"{out}/first.png", "rb") as f:
        client.videos.create(prompt="x", model="tiny", size="48x32", input_reference=f)
    check(False, "a picture for a text-only model accepted")
except openai.BadRequestError as e:
    check(e.body.get("param") == "input_reference" and "I2V" in e.body.get("message", ""), f"{e.body}")
client.videos.delete(i2v.id)

# Image to video on the embedded model, which rolls out from a given first frame: 2 s, two windows.
with open(f"{out}/first_toy.png", "rb") as f:
    toy = client.videos.create_and_poll(prompt="a red ball moves to the right on a blue floor", model="toy",
                                        seconds="2", size="32x32", input_reference=f, extra_body={"seed": 1})
check(toy.status == "completed" and toy.size == "32x32", f"embedded image to video: {toy}")
client.videos.download_content(toy.id).write_to_file(f"{out}/i2v_toy.mp4")

try:
    client.videos.create(prompt="x", model="tiny", seconds="-1")
    check(False, "negative seconds accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400 and e.body.get("param") == "seconds", f"{e.body}")

try:
    client.videos.create(prompt="x", model="sora-2")
    check(False, "unknown model accepted")
except openai.BadRequestError as e:
    check(e.body.get("param") == "model" and "tiny" in e.body.get("message", ""), f"{e.body}")

try:
    OpenAI(base_url=base_url, api_key="wrong", max_retries=0).videos.retrieve(video.id)
    check(False, "wrong key accepted")
except openai.AuthenticationError as e:
    check(e.status_code == 401, str(e))

deleted = client.videos.delete(remix.id)
check(deleted.deleted and deleted.id == remix.id and deleted.object == "video.deleted", str(deleted))
try:
    client.videos.retrieve(remix.id)
    check(False, "deleted video still there")
except openai.NotFoundError:
    pass

json.dump({"id": video.id, "remix": remix.id, "sdk": openai.__version__}, open(f"{out}/result.json", "w"))
print(f"openai {openai.__version__}: create_and_poll, retrieve, list, download_content x3, remix, input_reference, "
      "errors, delete: ok")
