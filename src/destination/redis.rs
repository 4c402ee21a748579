//! PLACEHOLDER: the redis destination is being written; `open` refuses until then.

/// The redis destination.
pub struct Unbuilt;

impl super::Destination for Unbuilt {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn send(
        &self,
        messages: Vec<super::Message>,
        _timeout: std::time::Duration,
    ) -> futures::future::BoxFuture<'static, Vec<Result<(), super::SendError>>> {
        let count = messages.len();
        Box::pin(async move { vec![Err(super::SendError::Refused("not built".to_owned())); count] })
    }
}

pub fn open(_url: &url::Url) -> Result<Unbuilt, String> {
    Err("the redis destination is not built yet".to_owned())
}
