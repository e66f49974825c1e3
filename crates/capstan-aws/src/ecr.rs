//! ECR: resolving an image reference to its digest, for the Pipeline's Deploy stages,
//! which pin every image to `repository@sha256:...` so that production runs exactly
//! the image staging tested ([`SdkEcr::digest`]), and checking that a pinned digest
//! exists in a registry before a Deploy in another account uses it
//! ([`SdkEcr::has_digest`]).

use aws_sdk_ecr::error::ProvideErrorMetadata;
use aws_sdk_ecr::types::ImageIdentifier;
use capstan_core::error::Categorized;

/// An image in ECR: `<account>.dkr.ecr.<region>.amazonaws.com/<repository>[:tag|@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcrImage {
    /// The registry (AWS account id).
    pub registry: String,
    /// The region of the registry.
    pub region: String,
    /// The repository name (may contain `/`).
    pub repository: String,
    /// The tag, or the digest (`sha256:...`).
    pub reference: ImageReference,
}

/// How an image reference names its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageReference {
    /// By tag (`latest` when none is given); a tag can move.
    Tag(String),
    /// By digest; it cannot.
    Digest(String),
}

impl EcrImage {
    /// Parses an ECR image reference; `None` for an image of another registry.
    pub fn parse(image: &str) -> Option<Self> {
        let (host, path) = image.split_once('/')?;
        let parts: Vec<&str> = host.split('.').collect();
        // <account>.dkr.ecr.<region>.amazonaws.com[.cn]
        if parts.len() < 6
            || parts[1] != "dkr"
            || parts[2] != "ecr"
            || !parts[0].chars().all(|c| c.is_ascii_digit())
            || !host.contains(".amazonaws.com")
        {
            return None;
        }
        let (repository, reference) = if let Some((r, d)) = path.split_once('@') {
            (r, ImageReference::Digest(d.to_owned()))
        } else {
            match path.rsplit_once(':') {
                Some((r, t)) => (r, ImageReference::Tag(t.to_owned())),
                None => (path, ImageReference::Tag("latest".to_owned())),
            }
        };
        Some(Self {
            registry: parts[0].to_owned(),
            region: parts[3].to_owned(),
            repository: repository.to_owned(),
            reference,
        })
    }

    /// `<registry host>/<repository>@<digest>`.
    pub fn pinned(&self, digest: &str) -> String {
        format!(
            "{}.dkr.ecr.{}.amazonaws.com/{}@{digest}",
            self.registry, self.region, self.repository
        )
    }
}

/// Why an ECR call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("ECR {operation} failed: {message}")]
pub struct EcrError {
    /// The operation.
    pub operation: &'static str,
    /// The error code, if ECR sent one.
    pub code: Option<String>,
    /// What the SDK reported.
    pub message: String,
}

impl Categorized for EcrError {
    fn category(&self) -> &'static str {
        "ecr_call"
    }
}

/// The ECR calls Capstan makes, over the AWS SDK.
#[derive(Debug, Clone)]
pub struct SdkEcr {
    client: aws_sdk_ecr::Client,
    budget: crate::budget::Budget,
}

impl SdkEcr {
    /// A client from a configuration.
    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_ecr::Client::new(config),
            budget: crate::budget::Budget::default(),
        }
    }

    /// Takes a token of the request budget before each call (see [`crate::budget`]).
    pub fn with_budget(mut self, budget: crate::budget::Budget) -> Self {
        self.budget = budget;
        self
    }

    /// The digest `image` names now (DescribeImages), or `None` when the registry has
    /// no such image (or repository).
    pub async fn digest(&self, image: &EcrImage) -> Result<Option<String>, EcrError> {
        let id = match &image.reference {
            ImageReference::Tag(t) => ImageIdentifier::builder().image_tag(t).build(),
            ImageReference::Digest(d) => ImageIdentifier::builder().image_digest(d).build(),
        };
        self.budget.acquire(crate::budget::ECR_READ).await;
        let out = self
            .client
            .describe_images()
            .registry_id(&image.registry)
            .repository_name(&image.repository)
            .image_ids(id)
            .send()
            .await;
        match out {
            Ok(out) => Ok(out
                .image_details()
                .iter()
                .find_map(|d| d.image_digest().map(str::to_owned))),
            Err(e) => match e.code() {
                Some("ImageNotFoundException" | "RepositoryNotFoundException") => Ok(None),
                code => Err(EcrError {
                    operation: "DescribeImages",
                    code: code.map(str::to_owned),
                    message: aws_sdk_ecr::error::DisplayErrorContext(&e).to_string(),
                }),
            },
        }
    }

    /// Whether the repository of `image` holds `digest`.
    pub async fn has_digest(&self, image: &EcrImage, digest: &str) -> Result<bool, EcrError> {
        let by_digest = EcrImage {
            reference: ImageReference::Digest(digest.to_owned()),
            ..image.clone()
        };
        Ok(self.digest(&by_digest).await?.as_deref() == Some(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecr_references_parse() {
        let i = EcrImage::parse("123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/shop:1.4.2")
            .expect("ecr");
        assert_eq!(i.registry, "123456789012");
        assert_eq!(i.region, "eu-west-1");
        assert_eq!(i.repository, "team/shop");
        assert_eq!(i.reference, ImageReference::Tag("1.4.2".into()));
        assert_eq!(
            i.pinned("sha256:ab"),
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/shop@sha256:ab"
        );
        let d = EcrImage::parse("123456789012.dkr.ecr.eu-west-1.amazonaws.com/shop@sha256:ab")
            .expect("ecr");
        assert_eq!(d.reference, ImageReference::Digest("sha256:ab".into()));
        let l = EcrImage::parse("123456789012.dkr.ecr.eu-west-1.amazonaws.com/shop").expect("ecr");
        assert_eq!(l.reference, ImageReference::Tag("latest".into()));
        for other in [
            "nginx:1.27",
            "registry.example.com/shop:1",
            "ghcr.io/x/y@sha256:ab",
            "abc.dkr.ecr.eu-west-1.amazonaws.com/shop:1",
        ] {
            assert_eq!(EcrImage::parse(other), None, "{other}");
        }
    }
}
