from pathlib import Path

import pytest

from kb.config import load_settings
from kb.errors import ConfigError


def test_precedence_defaults_toml_env_flags(tmp_path: Path):
    toml = tmp_path / "seekframe.toml"
    toml.write_text('[seekframe]\nengine = "ocr"\ntop_k = 7\nmodel = "from-toml"\n')
    env = {"KB_MODEL": "from-env", "KB_HOME": str(tmp_path / "envhome")}
    s = load_settings({"home": tmp_path / "flaghome", "top_k": None}, env=env, toml_path=toml)
    assert s.engine == "ocr" and s.origins["engine"] == str(toml)
    assert s.top_k == 7
    assert s.model == "from-env" and s.origins["model"] == "KB_MODEL"
    assert s.home == tmp_path / "flaghome" and s.origins["home"] == "flag"


def test_every_documented_variable_is_read():
    env = {"KB_HOME": "/x", "KB_ENGINE": "openai", "KB_MODEL": "m", "KB_OPENAI_BASE_URL": "http://h:1/v1",
           "KB_EMBED_MODEL": "e", "KB_DEVICE": "cpu", "KB_DTYPE": "float32", "KB_QUANT": "nf4",
           "KB_CHROMA_URL": "http://c:8000", "KB_IMAGE_MAX_PIXELS": "999999"}
    s = load_settings(env=env)
    assert (str(s.home), s.engine, s.model, s.openai_base_url, s.embed_model, s.device, s.dtype, s.quant,
            s.chroma_url, s.image_max_pixels) == ("/x", "openai", "m", "http://h:1/v1", "e", "cpu", "float32",
                                                  "nf4", "http://c:8000", 999999)


@pytest.mark.parametrize("env, words", [
    ({"KB_ENGINE": "gpt"}, "KB_ENGINE"),
    ({"KB_ENGINE": "openai"}, "KB_OPENAI_BASE_URL"),
    ({"KB_QUANT": "int3"}, "KB_QUANT"),
    ({"KB_TOP_K": "many"}, "KB_TOP_K"),
])
def test_bad_settings_name_the_fix(env, words):
    with pytest.raises(ConfigError) as err:
        load_settings(env=env)
    assert words in str(err.value)


def test_secrets_are_masked():
    s = load_settings(env={"KB_OPENAI_API_KEY": "sk-verysecretvalue"})
    assert "verysecret" not in str(s.masked())


def test_a_config_file_naming_a_retired_setting_still_loads(tmp_path: Path):
    toml = tmp_path / "seekframe.toml"
    toml.write_text('[seekframe]\ngeneration_cache = "static"\ntop_k = 3\n')
    s = load_settings(env={}, toml_path=toml)
    assert s.top_k == 3 and "generation_cache" not in s.origins
    toml.write_text('[seekframe]\ngeneration_cahce = "static"\n')  # a misspelt name is still refused
    with pytest.raises(ConfigError, match="generation_cahce"):
        load_settings(env={}, toml_path=toml)
