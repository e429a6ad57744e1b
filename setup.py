"""Package definition; also what Dataflow workers install with --setup_file=./setup.py."""

import setuptools

REQUIRED = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    "tensorflow-transform==1.21.0",
    "tfx-bsl==1.21.0",
    "tensorflow-hub==0.16.1",
    "scann==1.4.2",
    "pyarrow>=20",
    "numpy>=2",
    "google-cloud-storage>=2",
    "requests>=2.31",
    "beautifulsoup4>=4.12",
    "Pillow>=10",
    "duckdb>=1.0",
    "setuptools<81",
]

setuptools.setup(
    name="poster-recs",
    version="0.1.0",
    description="Beam pipelines that turn movie posters into recommendation candidates",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(
        include=[
            "pipelines*", "transforms*", "reporting*", "models*", "fetching*", "imaging*",
            "storage*", "schemas*", "monitoring*", "synthetic*",
        ]
    ),
    package_data={"pipelines": ["help/*.txt"]},  # --help answers from these (pipelines/__init__)
    install_requires=REQUIRED,
    extras_require={
        # pytest-xdist: make test runs the suite on two worker processes (tests/scheduling.py).
        "test": ["pytest>=8", "pytest-timeout>=2", "pytest-xdist>=3.8", "ruff>=0.6",
                 "scikit-learn>=1.5"],
        # Local stand-ins for Cloud Storage and BigQuery, started by tests/cloud on 127.0.0.1.
        "emulators": ["gcp-storage-emulator>=2026.7", "bqemulator>=1.4"],
    },
)
