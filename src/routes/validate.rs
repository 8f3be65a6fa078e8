//! Validation of a create body, field by field, exactly as the upstream documents it, so
//! every refusal names its `param`. Unknown fields are refused: nothing unpriced passes.

use serde_json::{Map, Value};

use crate::billing::{self, Charge, Micros};
use crate::config::Config;
use crate::error::ApiError;

pub const MAX_PROMPT_CHARS: usize = 1500;
pub const MAX_CALLBACK_URL_LEN: usize = 2048;
pub const ASPECT_RATIOS: &[&str] = &["16:9", "9:16", "1:1", "4:3", "3:4"];
pub const QUALITIES: &[&str] = &["720p", "1080p"];
const TOP_LEVEL_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "video_urls",
    "aspect_ratio",
    "quality",
    "duration",
    "model_params",
    "callback_url",
];
const MODEL_PARAMS_FIELDS: &[&str] = &["generate_audio"];

/// A create request after validation, with every default made explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub model: String,
    pub prompt: String,
    pub video_urls: Vec<String>,
    pub aspect_ratio: String,
    pub quality: String,
    pub duration: u32,
    pub generate_audio: bool,
    pub callback_url: Option<String>,
}

impl CreateRequest {
    /// The body sent upstream: explicit values, so the upstream bills what was priced; the
    /// caller's `callback_url` stays with vidgate.
    pub fn upstream_body(&self, own_callback_url: Option<&str>) -> Value {
        let mut body = serde_json::json!({
            "model": self.model,
            "prompt": self.prompt,
            "video_urls": self.video_urls,
            "aspect_ratio": self.aspect_ratio,
            "quality": self.quality,
            "duration": self.duration,
            "model_params": {"generate_audio": self.generate_audio},
        });
        if let (Some(url), Some(map)) = (own_callback_url, body.as_object_mut()) {
            map.insert("callback_url".into(), Value::String(url.to_string()));
        }
        body
    }
}

/// What a create costs before it runs: the hold it takes, and what a quote answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priced {
    pub price_per_second: Micros,
    /// Billed input of the measured references and the requested output.
    pub charge: Charge,
}

impl CreateRequest {
    /// The price of this request once its references measured `durations_ms`.
    pub fn price(&self, config: &Config, durations_ms: &[u64]) -> Result<Priced, ApiError> {
        let price_per_second = config
            .price_per_second(&self.model, &self.quality, self.generate_audio)
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("quality {:?} is not priced for this model", self.quality),
                    "quality",
                )
            })?;
        let output_ms = u64::from(self.duration) * 1000;
        Ok(Priced {
            price_per_second,
            charge: billing::charge(durations_ms, output_ms, price_per_second),
        })
    }
}

/// Parses and validates; `model_priced` says whether the gateway has prices for a model.
pub fn parse_create(body: &Value, model_priced: impl Fn(&str) -> bool) -> Result<CreateRequest, ApiError> {
    let map = body
        .as_object()
        .ok_or_else(|| ApiError::invalid_body("the body must be a JSON object"))?;
    refuse_unknown(map, TOP_LEVEL_FIELDS, "")?;
    let model = required_str(map, "model")?;
    if !model_priced(&model) {
        return Err(ApiError::invalid(
            format!("model {model:?} is not available through this gateway"),
            "model",
        ));
    }
    let prompt = required_str(map, "prompt")?;
    let prompt_chars = prompt.chars().count();
    if prompt.trim().is_empty() || prompt_chars > MAX_PROMPT_CHARS {
        return Err(ApiError::invalid(
            format!("prompt must be 1 to {MAX_PROMPT_CHARS} characters (got {prompt_chars})"),
            "prompt",
        ));
    }
    let (generate_audio, callback_url) = (generate_audio(map)?, optional_str(map, "callback_url")?);
    if let Some(url) = &callback_url
        && url.len() > MAX_CALLBACK_URL_LEN
    {
        return Err(ApiError::InvalidCallbackUrl {
            message: format!("callback_url must be at most {MAX_CALLBACK_URL_LEN} characters"),
            param: Some("callback_url".into()),
        });
    }
    Ok(CreateRequest {
        model,
        prompt,
        video_urls: video_urls(map)?,
        aspect_ratio: one_of(map, "aspect_ratio", ASPECT_RATIOS, "16:9")?,
        quality: one_of(map, "quality", QUALITIES, "720p")?,
        duration: duration(map)?,
        generate_audio,
        callback_url,
    })
}

fn refuse_unknown(map: &Map<String, Value>, known: &[&str], prefix: &str) -> Result<(), ApiError> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(field) => Err(ApiError::invalid(
            format!("unknown field {field:?}; allowed: {}", known.join(", ")),
            format!("{prefix}{field}"),
        )),
        None => Ok(()),
    }
}

fn required_str(map: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    optional_str(map, field)?.ok_or_else(|| ApiError::invalid(format!("{field} is required"), field))
}

fn optional_str(map: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(format!("{field} must be a string"), field)),
    }
}

fn one_of(map: &Map<String, Value>, field: &str, allowed: &[&str], default: &str) -> Result<String, ApiError> {
    let value = optional_str(map, field)?.unwrap_or_else(|| default.to_string());
    if allowed.contains(&value.as_str()) {
        Ok(value)
    } else {
        Err(ApiError::invalid(
            format!("{field} must be one of {}; got {value:?}", allowed.join(", ")),
            field,
        ))
    }
}

fn video_urls(map: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let list = match map.get("video_urls") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("video_urls is required", "video_urls"));
        }
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(ApiError::invalid(
                "video_urls must be an array of URL strings",
                "video_urls",
            ));
        }
    };
    if list.is_empty() || list.len() > 3 {
        return Err(ApiError::invalid(
            format!("video_urls must hold 1 to 3 URLs (got {})", list.len()),
            "video_urls",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let param = format!("video_urls[{i}]");
            let text = v
                .as_str()
                .ok_or_else(|| ApiError::invalid("must be a URL string", param.clone()))?;
            let url =
                url::Url::parse(text).map_err(|e| ApiError::invalid(format!("not a valid URL: {e}"), param.clone()))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(ApiError::invalid("must be an http or https URL", param));
            }
            Ok(text.to_string())
        })
        .collect()
}

fn duration(map: &Map<String, Value>) -> Result<u32, ApiError> {
    match map.get("duration") {
        None | Some(Value::Null) => Ok(5),
        // JSON has no integer type of its own: 6.0 is the integer 6 (as JSON Schema agrees).
        Some(Value::Number(n)) => match n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as u64))
        {
            Some(d @ 2..=10) => Ok(d as u32),
            _ => Err(ApiError::invalid(
                format!("duration must be an integer from 2 to 10 (got {n})"),
                "duration",
            )),
        },
        Some(_) => Err(ApiError::invalid(
            "duration must be an integer from 2 to 10",
            "duration",
        )),
    }
}

fn generate_audio(map: &Map<String, Value>) -> Result<bool, ApiError> {
    let params = match map.get("model_params") {
        None | Some(Value::Null) => return Ok(true),
        Some(Value::Object(params)) => params,
        Some(_) => {
            return Err(ApiError::invalid("model_params must be an object", "model_params"));
        }
    };
    refuse_unknown(params, MODEL_PARAMS_FIELDS, "model_params.")?;
    match params.get("generate_audio") {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(
            "generate_audio must be true or false",
            "model_params.generate_audio",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param_of(body: Value) -> Option<String> {
        match parse_create(&body, |m| m == "wan2.6-reference-video-flash") {
            Err(ApiError::InvalidRequest { param, .. } | ApiError::InvalidCallbackUrl { param, .. }) => param,
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => None,
        }
    }

    fn base() -> Value {
        json!({"model": "wan2.6-reference-video-flash", "prompt": "a cat", "video_urls": ["https://cdn.example.com/a.mp4"]})
    }

    fn with(field: &str, value: Value) -> Value {
        let mut body = base();
        body[field] = value;
        body
    }

    #[test]
    fn defaults_are_made_explicit() {
        let request = parse_create(&base(), |_| true).expect("valid");
        assert_eq!(
            (request.quality.as_str(), request.duration, request.generate_audio),
            ("720p", 5, true)
        );
        assert_eq!(request.aspect_ratio, "16:9");
        assert!(request.upstream_body(None).get("callback_url").is_none());
    }

    #[test]
    fn each_bad_value_names_its_param() {
        assert_eq!(param_of(with("model", json!("other"))).as_deref(), Some("model"));
        assert_eq!(
            param_of(with("prompt", json!("x".repeat(1501)))).as_deref(),
            Some("prompt")
        );
        assert_eq!(param_of(with("video_urls", json!([]))).as_deref(), Some("video_urls"));
        assert_eq!(
            param_of(with("video_urls", json!(["https://a/x", "ftp://b/y"]))).as_deref(),
            Some("video_urls[1]")
        );
        assert_eq!(
            param_of(with("aspect_ratio", json!("2:1"))).as_deref(),
            Some("aspect_ratio")
        );
        assert_eq!(param_of(with("quality", json!("4k"))).as_deref(), Some("quality"));
        assert_eq!(param_of(with("duration", json!(11))).as_deref(), Some("duration"));
        assert_eq!(param_of(with("duration", json!(5.5))).as_deref(), Some("duration"));
        assert_eq!(param_of(with("duration", json!(6.0))), None);
        assert_eq!(
            param_of(with("model_params", json!({"generate_audio": "yes"}))).as_deref(),
            Some("model_params.generate_audio")
        );
        assert_eq!(
            param_of(with("model_params", json!({"seed": 1}))).as_deref(),
            Some("model_params.seed")
        );
        assert_eq!(param_of(with("seed", json!(1))).as_deref(), Some("seed"));
        assert_eq!(
            param_of(with("callback_url", json!("x".repeat(2049)))).as_deref(),
            Some("callback_url")
        );
    }

    #[test]
    fn prompt_length_counts_characters_not_bytes() {
        assert!(parse_create(&with("prompt", json!("é".repeat(1500))), |_| true).is_ok());
    }
}
