# GPU worker image for the embed stage on Dataflow: Beam's Python 3.11 SDK image (its boot
# entrypoint included) plus TensorFlow with its CUDA libraries and this project.
#
#   docker build -f docker/embed-gpu.Dockerfile -t REGION-docker.pkg.dev/PROJECT/REPO/poster-embed-gpu:0.1.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/poster-embed-gpu:0.1.0
FROM apache/beam_python3.11_sdk:2.77.0

WORKDIR /opt/poster-recs
COPY constraints.txt setup.py README.md ./
COPY pipelines ./pipelines
COPY transforms ./transforms
COPY reporting ./reporting
COPY models ./models
COPY fetching ./fetching
COPY imaging ./imaging
COPY storage ./storage
COPY schemas ./schemas
COPY monitoring ./monitoring
COPY synthetic ./synthetic

# The constraints pin every shared dependency to the versions tested here; tensorflow[and-cuda]
# adds NVIDIA's CUDA/cuDNN wheels, so the image needs no system CUDA installation.
RUN pip install --no-cache-dir -c constraints.txt "tensorflow[and-cuda]==2.21.0" \
 && pip install --no-cache-dir -c constraints.txt .

# Let TensorFlow grow GPU memory as needed (the model handler also sets memory growth).
ENV TF_FORCE_GPU_ALLOW_GROWTH=true

# Beam's SDK harness boot program must stay the entrypoint.
ENTRYPOINT ["/opt/apache/beam/boot"]
