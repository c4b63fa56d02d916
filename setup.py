"""Installable so that Beam workers can import the job's code (`--setup_file ./setup.py`)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def pinned(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


setup(
    name="datacompdr-reinforce",
    version="0.1.0",
    description="Build DataCompDR-style reinforced image-text datasets with Apache Beam "
    "and train MobileCLIP students on them.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",
    packages=find_packages(
        include=["shards*", "pipeline*", "teachers*", "transforms*", "beam_jobs*", "inspection*", "trainer*"]
    ),
    install_requires=pinned("requirements.txt"),
    extras_require={"dev": pinned("requirements-dev.txt")},
)
