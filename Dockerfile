FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY newsletter newsletter
COPY subscribers subscribers
COPY worker worker
COPY templates templates
RUN pip install --no-cache-dir ".[postgres]"
RUN useradd --create-home newsletter
USER newsletter
EXPOSE 8000
CMD ["newsletter", "serve", "--host", "0.0.0.0", "--port", "8000"]
