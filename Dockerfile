# The one image of every service: `python -m services.<name>` (deploy/kubernetes sets the args).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install . && useradd --uid 10001 --no-create-home exporter
USER 10001
CMD ["python", "-m", "services.admin"]
