"""DVC stage fetch: real captchas from URLs, files, archives or folders into an unlabelled pool and a labelled set."""

import shutil

from simcaptcha.config import load_config
from simcaptcha.errors import SimcaptchaError, run_main
from simcaptcha.fetch import fetch_set
from simcaptcha.pipeline import FETCH_CACHE, FETCHED, ROLES, stage_metrics
from simcaptcha.store import empty_manifest, write_encoded_set


def main() -> None:
    config = load_config().fetch
    with stage_metrics("fetch") as figures:
        for role in ROLES:
            source = getattr(config, role)
            if source.sources:
                blobs, manifest = fetch_set(source, config, role, FETCH_CACHE / role)
            elif role == "labelled":  # a site may come with no labels at all
                blobs, manifest = [], empty_manifest()
            else:
                raise SimcaptchaError("params: fetch.unlabelled.sources is empty: name at least one URL or path")
            write_encoded_set(FETCHED / role, blobs, manifest, config.shard_size)
            figures[role] = {"images": len(blobs), "megabytes": round(sum(map(len, blobs)) / 1e6, 2)}
    shutil.rmtree(FETCH_CACHE, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
