"""Small TFDS builders for tests (a builder class must live in a package).

TFDS has no preference dataset; this one has the shape of one, with its own
feature names, so the field_map path is exercised end to end on real
ArrayRecord files (prepared without TensorFlow).
"""

import tensorflow_datasets as tfds


class TinyPreferences(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "question": tfds.features.Text(), "good": tfds.features.Text(),
        "bad": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(10), "test": self._generate_examples(4)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"question": f"Write a review of film {i}.",
                "good": f"A wonderful film {i}.", "bad": f"A dreadful film {i}."}


def prepare_tiny_preferences(data_dir: str) -> str:
  TinyPreferences(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return "tiny_preferences"
